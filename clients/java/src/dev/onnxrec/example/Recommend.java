package dev.onnxrec.example;

import dev.onnxrec.v1.ModelRef;
import dev.onnxrec.v1.RecommendRequest;
import dev.onnxrec.v1.RecommendResponse;
import dev.onnxrec.v1.RecommenderServiceGrpc;
import dev.onnxrec.v1.ScoredItem;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.PrintStream;
import java.math.BigDecimal;
import java.math.RoundingMode;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.TimeUnit;

/**
 * Example onnxrec client in Java: top-k recommendations for one user.
 *
 * <pre>recommend ADDRESS MODEL USER_ID [K]</pre>
 *
 * <p>Prints one {@code ITEM_ID<TAB>SCORE} line per item (best first) and exits 0; on a gRPC error
 * prints {@code error: <STATUS_CODE>: <details>} to stderr and exits 1; on a usage error exits 2.
 */
public final class Recommend {
  private static final int DEFAULT_K = 10;
  private static final long DEADLINE_SECONDS = 5;

  private Recommend() {}

  public static void main(String[] args) throws InterruptedException {
    System.exit(run(args));
  }

  static int run(String[] args) throws InterruptedException {
    if (args.length < 3 || args.length > 4) {
      return usage();
    }
    String address = args[0];
    int k = DEFAULT_K;
    if (args.length == 4) {
      try {
        k = Integer.parseInt(args[3]);
      } catch (NumberFormatException e) {
        return usage();
      }
      if (k < 1) {
        return usage();
      }
    }

    // One channel per process; real applications build it once and share it between calls.
    ManagedChannel channel = ManagedChannelBuilder.forTarget(address).usePlaintext().build();
    try {
      RecommenderServiceGrpc.RecommenderServiceBlockingStub stub =
          RecommenderServiceGrpc.newBlockingStub(channel)
              .withDeadlineAfter(DEADLINE_SECONDS, TimeUnit.SECONDS);
      RecommendRequest request =
          RecommendRequest.newBuilder()
              .setModel(ModelRef.newBuilder().setName(args[1])) // version 0: the latest loaded
              .setUserId(args[2])
              .setK(k)
              .build();
      RecommendResponse response;
      try {
        response = stub.recommend(request);
      } catch (StatusRuntimeException e) {
        Status status = e.getStatus();
        String details = status.getDescription() != null ? status.getDescription() : "";
        if (status.getCause() != null) {
          // a local failure (connection refused, ...): the cause says more than "io exception"
          details += " (" + status.getCause().getMessage() + ")";
        }
        System.err.println("error: " + status.getCode().name() + ": " + details);
        return 1;
      }
      PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
      for (ScoredItem item : response.getItemsList()) {
        out.print(item.getItemId() + "\t" + formatScore(item.getScore()) + "\n");
      }
      out.flush();
      return out.checkError() ? 1 : 0;
    } finally {
      channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
  }

  /**
   * The score with six decimals, exactly as C's {@code printf("%.6f", (double) score)} and Python's
   * {@code f"{score:.6f}"} write it. String.format rounds the shortest decimal form half-up, which
   * differs on ties (2^-7 = 0.0078125 gives 0.007813, C gives 0.007812); BigDecimal rounds the
   * exact binary value instead.
   */
  static String formatScore(float score) {
    if (Float.isNaN(score)) {
      return "nan";
    }
    if (Float.isInfinite(score)) {
      return score > 0 ? "inf" : "-inf";
    }
    String text = new BigDecimal(score).setScale(6, RoundingMode.HALF_EVEN).toPlainString();
    // BigDecimal has no negative zero: C keeps the sign of -0.0 and of negatives that round to zero
    boolean negative = score < 0 || (score == 0 && 1 / score < 0);
    return negative && !text.startsWith("-") ? "-" + text : text;
  }

  private static int usage() {
    System.err.println("usage: recommend ADDRESS MODEL USER_ID [K]");
    System.err.println("  ADDRESS  host:port of an onnxrec server (plaintext), e.g. 127.0.0.1:50051");
    System.err.println("  MODEL    model name; its latest loaded version answers");
    System.err.println("  USER_ID  raw user id");
    System.err.println("  K        number of items, a positive integer (default " + DEFAULT_K + ")");
    return 2;
  }
}
