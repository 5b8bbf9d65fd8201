// Package promptgate is a small client for promptgate over the generated gRPC
// stubs (package promptgatev1): it dials with the API key and a default
// deadline on every call, builds typed inputs and reads google.rpc.ErrorInfo
// from errors.
package promptgate

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	promptgatev1 "github.com/promptgate/promptgate/clients/go/promptgate/v1"
)

// retryServiceConfig retries calls that fail with UNAVAILABLE (the call did
// not run: no connection, or a server draining for shutdown).
const retryServiceConfig = `{"methodConfig": [{
  "name": [{"service": "promptgate.v1.ExecutionService"}, {"service": "promptgate.v1.PromptService"}, {"service": "promptgate.v1.AdminService"}, {"service": "promptgate.v1.ChainService"}],
  "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "2s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
}]}`

// Client holds one connection and the service stubs.
type Client struct {
	Conn       *grpc.ClientConn
	Executions promptgatev1.ExecutionServiceClient
	Prompts    promptgatev1.PromptServiceClient
	Chains     promptgatev1.ChainServiceClient
	Admin      promptgatev1.AdminServiceClient
}

// Options configure Dial.
type Options struct {
	// APIKey is sent as "authorization: Bearer <key>".
	APIKey string
	// Timeout is the deadline of calls whose context has none (0: none).
	Timeout time.Duration
	// DialOptions are added after the defaults (plaintext unless given
	// credentials, the retry service config, the interceptors).
	DialOptions []grpc.DialOption
}

// Dial connects to target (host:port).
func Dial(target string, opts Options) (*Client, error) {
	dialOpts := []grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithDefaultServiceConfig(retryServiceConfig),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply interface{}, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, callOpts ...grpc.CallOption) error {
			ctx, cancel := opts.prepare(ctx)
			defer cancel()
			return invoker(ctx, method, req, reply, cc, callOpts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, callOpts ...grpc.CallOption) (grpc.ClientStream, error) {
			// The stream's deadline cannot be released here (the stream
			// outlives this call); it ends when the deadline passes.
			ctx, _ = opts.prepare(ctx)
			return streamer(ctx, desc, cc, method, callOpts...)
		}),
	}
	conn, err := grpc.Dial(target, append(dialOpts, opts.DialOptions...)...)
	if err != nil {
		return nil, err
	}
	return &Client{
		Conn:       conn,
		Executions: promptgatev1.NewExecutionServiceClient(conn),
		Prompts:    promptgatev1.NewPromptServiceClient(conn),
		Chains:     promptgatev1.NewChainServiceClient(conn),
		Admin:      promptgatev1.NewAdminServiceClient(conn),
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

func (o Options) prepare(ctx context.Context) (context.Context, context.CancelFunc) {
	if o.APIKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+o.APIKey)
	}
	if _, ok := ctx.Deadline(); !ok && o.Timeout > 0 {
		return context.WithTimeout(ctx, o.Timeout)
	}
	return ctx, func() {}
}

// Input is a typed input from a plain value: string → STRING, float64/int →
// NUMBER, bool → BOOLEAN, []*ChatMessage or *ChatHistory → CHAT_HISTORY,
// anything else (maps, slices, nil) → JSON.
func Input(name string, value interface{}) (*promptgatev1.PromptInput, error) {
	in := &promptgatev1.PromptInput{Name: name}
	switch v := value.(type) {
	case string:
		in.Value = &promptgatev1.PromptInput_StringValue{StringValue: v}
	case bool:
		in.Value = &promptgatev1.PromptInput_BoolValue{BoolValue: v}
	case int:
		in.Value = &promptgatev1.PromptInput_NumberValue{NumberValue: float64(v)}
	case float64:
		in.Value = &promptgatev1.PromptInput_NumberValue{NumberValue: v}
	case *promptgatev1.ChatHistory:
		in.Value = &promptgatev1.PromptInput_ChatHistory{ChatHistory: v}
	case []*promptgatev1.ChatMessage:
		in.Value = &promptgatev1.PromptInput_ChatHistory{ChatHistory: &promptgatev1.ChatHistory{Messages: v}}
	default:
		json, err := structpb.NewValue(v)
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", name, err)
		}
		in.Value = &promptgatev1.PromptInput_JsonValue{JsonValue: json}
	}
	return in, nil
}

// Inputs converts a map of plain values with Input.
func Inputs(values map[string]interface{}) ([]*promptgatev1.PromptInput, error) {
	result := make([]*promptgatev1.PromptInput, 0, len(values))
	for name, value := range values {
		in, err := Input(name, value)
		if err != nil {
			return nil, err
		}
		result = append(result, in)
	}
	return result, nil
}

// OutputText joins the text of the string outputs.
func OutputText(outputs []*promptgatev1.PromptOutput) string {
	text := ""
	for _, o := range outputs {
		text += o.GetStringValue()
	}
	return text
}

// ErrorDetails are the status code and google.rpc details of a failed call.
type ErrorDetails struct {
	Code       codes.Code
	Message    string
	Reason     string
	Domain     string
	Metadata   map[string]string
	Violations []*errdetails.BadRequest_FieldViolation
}

// Details reads the status and its ErrorInfo / BadRequest details from err.
func Details(err error) ErrorDetails {
	st := status.Convert(err)
	result := ErrorDetails{Code: st.Code(), Message: st.Message()}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			result.Reason, result.Domain, result.Metadata = d.GetReason(), d.GetDomain(), d.GetMetadata()
		case *errdetails.BadRequest:
			result.Violations = append(result.Violations, d.GetFieldViolations()...)
		}
	}
	return result
}
