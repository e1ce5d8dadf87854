package dev.pyrallel.bench;

import io.confluent.parallelconsumer.ParallelConsumerOptions;
import io.confluent.parallelconsumer.ParallelConsumerOptions.CommitMode;
import io.confluent.parallelconsumer.ParallelConsumerOptions.ProcessingOrder;
import io.confluent.parallelconsumer.ParallelStreamProcessor;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.Arrays;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * One benchmark run of Confluent's parallel-consumer, speaking the protocol of the Python
 * workers of {@code pyrallel bench}: arguments are {@code key=value} pairs, and stdout gets
 * one JSON object per line, {@code {"event":"ready",...}} once every expected partition is
 * assigned and {@code {"event":"result",...}} at the end.
 *
 * <p>Throughput is counted from the first handler call to the last handler end, so the
 * group join is not part of it. {@code work=sleep} blocks the handler thread for
 * {@code sleep_ms}; {@code work=latency} records now minus the produce time (nanoseconds
 * since the epoch, the record value) at handler end, except for warm-up records (values
 * starting with {@code w}).
 */
public final class PcBench {
  private PcBench() {}

  public static void main(String[] argv) throws Exception {
    Map<String, String> args = new HashMap<>();
    for (String arg : argv) {
      int eq = arg.indexOf('=');
      if (eq <= 0) {
        throw new IllegalArgumentException("expected key=value, got " + arg);
      }
      args.put(arg.substring(0, eq), arg.substring(eq + 1));
    }
    String work = args.getOrDefault("work", "noop");
    long target = Long.parseLong(args.get("messages"));
    double maxSeconds = Double.parseDouble(args.getOrDefault("max_seconds", "60"));
    double startTimeout = Double.parseDouble(args.getOrDefault("start_timeout", "60"));
    long sleepMs = Math.round(Double.parseDouble(args.getOrDefault("sleep_ms", "0")));
    int concurrency = Integer.parseInt(args.getOrDefault("max_in_flight", "1000"));
    int expectedPartitions = Integer.parseInt(args.getOrDefault("partitions", "1"));
    ProcessingOrder order =
        ProcessingOrder.valueOf(args.getOrDefault("ordering", "key").toUpperCase(Locale.ROOT));

    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, args.get("bootstrap"));
    props.put(ConsumerConfig.GROUP_ID_CONFIG, args.get("group"));
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
    props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(props);

    ParallelConsumerOptions<byte[], byte[]> options =
        ParallelConsumerOptions.<byte[], byte[]>builder()
            .ordering(order)
            .maxConcurrency(concurrency)
            .commitMode(CommitMode.PERIODIC_CONSUMER_ASYNCHRONOUS)
            .consumer(consumer)
            .build();
    ParallelStreamProcessor<byte[], byte[]> pc =
        ParallelStreamProcessor.createEosStreamProcessor(options);

    AtomicLong count = new AtomicLong();
    AtomicLong firstNs = new AtomicLong();
    AtomicLong lastNs = new AtomicLong();
    CountDownLatch first = new CountDownLatch(1);
    CountDownLatch done = new CountDownLatch(1);
    long[] latencies = work.equals("latency") ? new long[(int) target] : new long[0];
    AtomicInteger assigned = new AtomicInteger();
    AtomicInteger recorded = new AtomicInteger();

    pc.subscribe(
        List.of(args.get("topic")),
        new ConsumerRebalanceListener() {
          @Override
          public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
            if (assigned.addAndGet(partitions.size()) >= expectedPartitions
                && assigned.get() - partitions.size() < expectedPartitions) {
              emit("{\"event\":\"ready\",\"t\":" + wallSeconds() + "}");
            }
          }

          @Override
          public void onPartitionsRevoked(Collection<TopicPartition> partitions) {}
        });

    pc.poll(
        context -> {
          long started = System.nanoTime();
          if (firstNs.get() == 0 && firstNs.compareAndSet(0, started)) {
            first.countDown();
          }
          if (sleepMs > 0) {
            try {
              Thread.sleep(sleepMs);
            } catch (InterruptedException e) {
              Thread.currentThread().interrupt();
              return;
            }
          }
          long n = count.incrementAndGet();
          if (latencies.length > 0) {
            ConsumerRecord<byte[], byte[]> record = context.getSingleConsumerRecord();
            String value = new String(record.value(), StandardCharsets.US_ASCII);
            if (!value.startsWith("w")) { // warm-up records are counted, not recorded
              int slot = recorded.getAndIncrement();
              if (slot < latencies.length) {
                latencies[slot] = epochNanos() - Long.parseLong(value);
              }
            }
          }
          lastNs.accumulateAndGet(System.nanoTime(), Math::max);
          if (n == target) {
            done.countDown();
          }
        });

    String error = null;
    if (!first.await((long) (startTimeout * 1000), TimeUnit.MILLISECONDS)) {
      error = "no message within start_timeout=" + startTimeout + " s";
    } else {
      done.await((long) (maxSeconds * 1000), TimeUnit.MILLISECONDS);
    }
    long processed = count.get();
    double window = (lastNs.get() - firstNs.get()) / 1e9;
    StringBuilder out = new StringBuilder("{\"event\":\"result\"");
    out.append(",\"processed\":").append(processed);
    out.append(",\"window_s\":").append(window > 0 ? window : 0.0);
    out.append(",\"rate\":").append(window > 0 ? processed / window : 0.0);
    if (error != null) {
      out.append(",\"error\":\"").append(error).append('"');
    }
    if (latencies.length > 0) {
      int filled = Math.min(recorded.get(), latencies.length);
      long[] sorted = Arrays.copyOf(latencies, filled);
      Arrays.sort(sorted);
      out.append(",\"latency_ms\":").append(percentiles(sorted));
    }
    out.append('}');
    emit(out.toString());
    // Closing may wait on in-flight work and the group; the result is already out.
    Thread closer =
        new Thread(
            () -> {
              try {
                pc.closeDontDrainFirst(Duration.ofSeconds(5));
              } catch (RuntimeException e) {
                // Already reported; nothing to add.
              }
            });
    closer.setDaemon(true);
    closer.start();
    closer.join(8000);
    System.exit(0);
  }

  private static String percentiles(long[] sorted) {
    if (sorted.length == 0) {
      return "{}";
    }
    StringBuilder out = new StringBuilder("{");
    double[] qs = {50, 90, 99, 99.9, 100};
    String[] names = {"p50", "p90", "p99", "p999", "max"};
    for (int i = 0; i < qs.length; i++) {
      int idx = (int) Math.min(sorted.length - 1, Math.ceil(qs[i] / 100.0 * sorted.length) - 1);
      if (i > 0) {
        out.append(',');
      }
      out.append('"').append(names[i]).append("\":").append(sorted[Math.max(0, idx)] / 1e6);
    }
    out.append(",\"count\":").append(sorted.length).append('}');
    return out.toString();
  }

  private static long epochNanos() {
    Instant now = Instant.now();
    return now.getEpochSecond() * 1_000_000_000L + now.getNano();
  }

  private static double wallSeconds() {
    return epochNanos() / 1e9;
  }

  private static synchronized void emit(String line) {
    System.out.println(line);
    System.out.flush();
  }
}
