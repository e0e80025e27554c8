// Command recommend asks an onnxrec server for the top-k items of one user.
//
// Usage:
//
//	recommend ADDRESS MODEL USER_ID [K]
//
// It prints one line per item, "ITEM_ID<TAB>SCORE" (score with 6 decimals), best first, and exits 0.
// On a gRPC error it prints "error: <STATUS_CODE_NAME>: <details>" to stderr and exits 1;
// on a usage error it exits 2.
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	onnxrecv1 "onnxrec/gen/go/onnxrec/v1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	defaultK = 10
	deadline = 5 * time.Second
)

// codeNames are the canonical status code names (as in grpc/status.proto), e.g. NOT_FOUND;
// codes.Code.String() gives Go's spelling (NotFound) instead.
var codeNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

func codeName(c codes.Code) string {
	if name, ok := codeNames[c]; ok {
		return name
	}
	return c.String()
}

func usage() int {
	fmt.Fprintf(os.Stderr, "usage: %s ADDRESS MODEL USER_ID [K]\n", os.Args[0])
	return 2
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) < 3 || len(args) > 4 {
		return usage()
	}
	address, model, userID := args[0], args[1], args[2]
	k := int64(defaultK)
	if len(args) == 4 {
		var err error
		k, err = strconv.ParseInt(args[3], 10, 32)
		if err != nil || k < 1 {
			fmt.Fprintf(os.Stderr, "K must be a positive integer, got %q\n", args[3])
			return usage()
		}
	}

	// Plaintext connection; for a TLS server use grpc.WithTransportCredentials(credentials.NewTLS(...)).
	// grpc.Dial does not block: connection errors surface as UNAVAILABLE on the call.
	conn, err := grpc.Dial(address, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: cannot connect to %s: %v\n", address, err)
		return 1
	}
	defer conn.Close()
	client := onnxrecv1.NewRecommenderServiceClient(conn)

	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	resp, err := client.Recommend(ctx, &onnxrecv1.RecommendRequest{
		Model:  &onnxrecv1.ModelRef{Name: model}, // version 0: the latest loaded version
		UserId: userID,
		K:      int32(k),
	})
	if err != nil {
		st := status.Convert(err)
		fmt.Fprintf(os.Stderr, "error: %s: %s\n", codeName(st.Code()), st.Message())
		return 1
	}

	out := bufio.NewWriter(os.Stdout)
	for _, item := range resp.GetItems() {
		fmt.Fprintf(out, "%s\t%.6f\n", item.GetItemId(), item.GetScore())
	}
	if err := out.Flush(); err != nil {
		fmt.Fprintf(os.Stderr, "error: writing output: %v\n", err)
		return 1
	}
	return 0
}
