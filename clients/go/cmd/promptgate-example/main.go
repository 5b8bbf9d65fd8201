// Command promptgate-example tours the Go client: execute, stream, submit an
// actual, run a batch, run a chain, read an error's reason and hit a deadline.
// It prints one JSON object per step.
//
//	PROMPTGATE_ADDRESS=localhost:50051 PROMPTGATE_API_KEY=pgk_... promptgate-example
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/promptgate/promptgate/clients/go/promptgate"
	pb "github.com/promptgate/promptgate/clients/go/promptgate/v1"
)

func emit(step string, fields map[string]interface{}) {
	fields["step"] = step
	line, _ := json.Marshal(fields)
	fmt.Println(string(line))
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func run() error {
	address := os.Getenv("PROMPTGATE_ADDRESS")
	if address == "" {
		address = "localhost:50051"
	}
	client, err := promptgate.Dial(address, promptgate.Options{
		APIKey:  os.Getenv("PROMPTGATE_API_KEY"),
		Timeout: 10 * time.Second,
	})
	if err != nil {
		return err
	}
	defer client.Close()
	ctx := context.Background()
	inputs, err := promptgate.Inputs(map[string]interface{}{"question": "hi"})
	if err != nil {
		return err
	}

	// Execute the demo prompt.
	response, err := client.Executions.ExecutePrompt(ctx, &pb.ExecutePromptRequest{
		Target: &pb.ExecutePromptRequest_Prompt{Prompt: "demo"},
		Inputs: inputs,
	})
	if err != nil {
		return err
	}
	emit("execute", map[string]interface{}{
		"state":       response.GetState().String(),
		"executionId": response.GetExecutionId(),
		"text":        promptgate.OutputText(response.GetOutputs()),
		"model":       response.GetMeta().GetModel(),
	})

	// Stream it: initiated, text deltas, then fulfilled (or rejected).
	extra, err := structpb.NewStruct(map[string]interface{}{"mock": map[string]interface{}{"chunks": 4}})
	if err != nil {
		return err
	}
	stream, err := client.Executions.ExecutePromptStream(ctx, &pb.ExecutePromptRequest{
		Target:     &pb.ExecutePromptRequest_Prompt{Prompt: "demo"},
		Inputs:     inputs,
		Parameters: &pb.ModelParameters{Extra: extra},
	})
	if err != nil {
		return err
	}
	deltas, text, last := []string{}, "", ""
	for {
		event, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return err
		}
		switch e := event.GetEvent().(type) {
		case *pb.ExecutePromptStreamResponse_Initiated:
			last = "initiated"
		case *pb.ExecutePromptStreamResponse_Streaming:
			deltas, text, last = append(deltas, e.Streaming.GetDelta()), text+e.Streaming.GetDelta(), "streaming"
		case *pb.ExecutePromptStreamResponse_Fulfilled:
			last = "fulfilled"
		case *pb.ExecutePromptStreamResponse_Rejected:
			last = "rejected"
		}
	}
	emit("stream", map[string]interface{}{"deltas": deltas, "text": text, "last": last})

	// Feedback on the first execution.
	quality := 0.8
	actuals, err := client.Executions.SubmitActuals(ctx, &pb.SubmitActualsRequest{Actuals: []*pb.Actual{{
		Execution:     &pb.Actual_ExecutionId{ExecutionId: response.GetExecutionId()},
		Quality:       &quality,
		DesiredOutput: "Hello.",
	}}})
	if err != nil {
		return err
	}
	emit("actual", map[string]interface{}{
		"id":          actuals.GetActuals()[0].GetId(),
		"executionId": actuals.GetActuals()[0].GetExecutionId(),
	})

	// A batch of two items, watched until it finishes.
	first, _ := promptgate.Inputs(map[string]interface{}{"question": "first"})
	second, _ := promptgate.Inputs(map[string]interface{}{"question": "second"})
	created, err := client.Executions.ExecuteBatch(ctx, &pb.ExecuteBatchRequest{
		Target: &pb.ExecuteBatchRequest_Prompt{Prompt: "demo"},
		Items:  []*pb.BatchItem{{CustomId: "a", Inputs: first}, {CustomId: "b", Inputs: second}},
	})
	if err != nil {
		return err
	}
	batchID := created.GetBatch().GetId()
	watchCtx, stopWatch := context.WithCancel(ctx)
	watch, err := client.Executions.WatchBatch(watchCtx, &pb.WatchBatchRequest{BatchId: batchID})
	if err != nil {
		stopWatch()
		return err
	}
	state := created.GetBatch().GetState()
	for state != pb.BatchState_BATCH_STATE_SUCCEEDED && state != pb.BatchState_BATCH_STATE_FAILED &&
		state != pb.BatchState_BATCH_STATE_CANCELLED {
		event, err := watch.Recv()
		if err != nil {
			stopWatch()
			return err
		}
		if progress := event.GetProgress(); progress != nil {
			state = progress.GetState()
		}
	}
	stopWatch()
	results, err := client.Executions.ListBatchResults(ctx, &pb.ListBatchResultsRequest{BatchId: batchID})
	if err != nil {
		return err
	}
	pairs := [][]string{}
	for _, r := range results.GetResults() {
		pairs = append(pairs, []string{r.GetCustomId(), promptgate.OutputText(r.GetOutputs())})
	}
	emit("batch", map[string]interface{}{"id": batchID, "state": state.String(), "results": pairs})

	// A chain: an inline step whose output becomes the demo prompt's "question".
	word, _ := promptgate.Inputs(map[string]interface{}{"word": "hi"})
	chained, err := client.Chains.ExecuteChain(ctx, &pb.ExecuteChainRequest{
		Target: &pb.ExecuteChainRequest_InlineChain{InlineChain: &pb.InlineChain{Steps: []*pb.ChainStep{
			{
				Name:           "shout",
				Target:         &pb.ChainStep_InlinePrompt{InlinePrompt: &pb.InlinePrompt{Model: "mock-1", Prompt: "Shout {{ word }}"}},
				OutputVariable: "question",
			},
			{Name: "answer", Target: &pb.ChainStep_Prompt{Prompt: "demo"}, OutputVariable: "answer"},
		}}},
		Inputs: word,
	})
	if err != nil {
		return err
	}
	execution := chained.GetChainExecution()
	names, ids := []string{}, []string{}
	for _, s := range execution.GetSteps() {
		names, ids = append(names, s.GetName()), append(ids, s.GetExecutionId())
	}
	emit("chain", map[string]interface{}{
		"state":            execution.GetState().String(),
		"chainExecutionId": execution.GetId(),
		"steps":            names,
		"executionIds":     ids,
		"text":             promptgate.OutputText(execution.GetOutputs()),
	})

	// An unknown prompt: NOT_FOUND with a google.rpc.ErrorInfo reason.
	_, err = client.Executions.ExecutePrompt(ctx, &pb.ExecutePromptRequest{
		Target: &pb.ExecutePromptRequest_Prompt{Prompt: "no-such-prompt"},
	})
	details := promptgate.Details(err)
	emit("error", map[string]interface{}{
		"code": details.Code.String(), "reason": details.Reason, "domain": details.Domain, "message": details.Message,
	})

	// A deadline shorter than the (mock) provider's latency. promptgate answers
	// REJECTED EXECUTION_TIMEOUT just before the deadline, unless it fires first.
	slowExtra, _ := structpb.NewStruct(map[string]interface{}{"mock": map[string]interface{}{"latency_ms": 5000}})
	deadlineCtx, cancel := context.WithTimeout(ctx, 600*time.Millisecond)
	defer cancel()
	started := time.Now()
	slow, err := client.Executions.ExecutePrompt(deadlineCtx, &pb.ExecutePromptRequest{
		Target: &pb.ExecutePromptRequest_InlinePrompt{InlinePrompt: &pb.InlinePrompt{
			Model: "mock-1", Prompt: "slow", Parameters: &pb.ModelParameters{Extra: slowExtra},
		}},
	})
	elapsed := time.Since(started).Milliseconds()
	if err != nil {
		code := promptgate.Details(err).Code
		outcome := code.String()
		if code == codes.DeadlineExceeded {
			outcome = "DEADLINE_EXCEEDED"
		}
		emit("deadline", map[string]interface{}{"outcome": outcome, "elapsedMs": elapsed})
	} else {
		emit("deadline", map[string]interface{}{
			"outcome": slow.GetState().String(), "errorCode": slow.GetError().GetCode(), "elapsedMs": elapsed,
		})
	}
	return nil
}
