// Example onnxrec client in C++: top-k recommendations for one user.
//
//   recommend ADDRESS MODEL USER_ID [K]
//
// Prints one "ITEM_ID<TAB>SCORE" line per item (best first) and exits 0; on a gRPC error prints
// "error: <STATUS_CODE>: <details>" to stderr and exits 1; on a usage error exits 2.

#include <chrono>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "onnxrec/v1/recommender.grpc.pb.h"

namespace {

constexpr int kDefaultK = 10;
constexpr auto kDeadline = std::chrono::seconds(5);

// The canonical UPPER_SNAKE name of a status code, as every gRPC implementation spells it.
const char* StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

int Usage(const char* program) {
  std::fprintf(stderr, "usage: %s ADDRESS MODEL USER_ID [K]\n", program);
  std::fprintf(stderr, "  ADDRESS  host:port of an onnxrec server (plaintext), e.g. 127.0.0.1:50051\n");
  std::fprintf(stderr, "  MODEL    model name; its latest loaded version answers\n");
  std::fprintf(stderr, "  USER_ID  raw user id\n");
  std::fprintf(stderr, "  K        number of items, a positive integer (default %d)\n", kDefaultK);
  return 2;
}

// Parses a positive int32; false when text is not one.
bool ParseK(const char* text, int* k) {
  errno = 0;
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value < 1 || value > INT_MAX) return false;
  *k = static_cast<int>(value);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) return Usage(argv[0]);
  const std::string address = argv[1];
  int k = kDefaultK;
  if (argc == 5 && !ParseK(argv[4], &k)) return Usage(argv[0]);

  // One channel per process; real applications create it once and share it between calls.
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  std::unique_ptr<onnxrec::v1::RecommenderService::Stub> stub = onnxrec::v1::RecommenderService::NewStub(channel);

  onnxrec::v1::RecommendRequest request;
  request.mutable_model()->set_name(argv[2]);  // version 0: the latest loaded version
  request.set_user_id(argv[3]);
  request.set_k(k);

  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kDeadline);

  onnxrec::v1::RecommendResponse response;
  const grpc::Status status = stub->Recommend(&context, request, &response);
  if (!status.ok()) {
    std::fprintf(stderr, "error: %s: %s\n", StatusCodeName(status.error_code()), status.error_message().c_str());
    return 1;
  }
  for (const onnxrec::v1::ScoredItem& item : response.items()) {
    std::printf("%s\t%.6f\n", item.item_id().c_str(), static_cast<double>(item.score()));
  }
  return std::fflush(stdout) == 0 ? 0 : 1;
}
