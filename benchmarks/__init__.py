"""The `pyrallel bench` harness: scenarios, contenders, workers and reports (see README.md)."""
