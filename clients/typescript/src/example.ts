// A complete tour of the client: execute, stream, submit an actual, run a batch,
// run a chain, read an error's reason and hit a deadline. Prints one JSON object
// per step.
//
//   PROMPTGATE_URL=http://localhost:50051 PROMPTGATE_API_KEY=pgk_... node dist/example.js
import { create } from "@bufbuild/protobuf";
import {
  BatchState,
  Code,
  ExecutionState,
  InlinePromptSchema,
  createPromptgateClient,
  errorDetails,
  inputs,
  outputText,
} from "./index.js";

const print = (step: string, fields: Record<string, unknown>) =>
  console.log(JSON.stringify({ step, ...fields }));

async function main(): Promise<void> {
  const client = createPromptgateClient({
    baseUrl: process.env.PROMPTGATE_URL ?? "http://localhost:50051",
    apiKey: process.env.PROMPTGATE_API_KEY,
    timeoutMs: 10_000,
  });

  // Execute the demo prompt.
  const response = await client.executions.executePrompt({
    target: { case: "prompt", value: "demo" },
    inputs: inputs({ question: "hi" }),
  });
  print("execute", {
    state: ExecutionState[response.state],
    executionId: response.executionId,
    text: outputText(response.outputs),
    model: response.meta?.model,
  });

  // Stream it: initiated, text deltas, then fulfilled (or rejected).
  const deltas: string[] = [];
  let last = "";
  for await (const event of client.executions.executePromptStream({
    target: { case: "prompt", value: "demo" },
    inputs: inputs({ question: "hi" }),
    parameters: { extra: { mock: { chunks: 4 } } },
  })) {
    if (event.event.case === "streaming") deltas.push(event.event.value.delta);
    last = event.event.case ?? "";
  }
  print("stream", { deltas, text: deltas.join(""), last });

  // Feedback on the first execution.
  const actuals = await client.executions.submitActuals({
    actuals: [{ execution: { case: "executionId", value: response.executionId }, quality: 0.8, desiredOutput: "Hello." }],
  });
  print("actual", { id: actuals.actuals[0]?.id, executionId: actuals.actuals[0]?.execution.value });

  // A batch of two items, watched until it finishes.
  const { batch } = await client.executions.executeBatch({
    target: { case: "prompt", value: "demo" },
    items: [
      { customId: "a", inputs: inputs({ question: "first" }) },
      { customId: "b", inputs: inputs({ question: "second" }) },
    ],
  });
  let state = batch?.state ?? BatchState.UNSPECIFIED;
  const watch = new AbortController();
  try {
    for await (const event of client.executions.watchBatch({ batchId: batch?.id ?? "" }, { signal: watch.signal })) {
      if (event.event.case === "progress") state = event.event.value.state;
      if (state === BatchState.SUCCEEDED || state === BatchState.FAILED || state === BatchState.CANCELLED) {
        watch.abort(); // done: cancel the watch stream
      }
    }
  } catch (err) {
    if (!watch.signal.aborted) throw err;
  }
  const results = await client.executions.listBatchResults({ batchId: batch?.id ?? "" });
  print("batch", {
    id: batch?.id,
    state: BatchState[state],
    results: results.results.map((r) => [r.customId, outputText(r.outputs)]),
  });

  // A chain: an inline step whose output becomes the demo prompt's "question".
  const { chainExecution } = await client.chains.executeChain({
    target: {
      case: "inlineChain",
      value: {
        steps: [
          {
            name: "shout",
            target: { case: "inlinePrompt", value: { model: "mock-1", prompt: "Shout {{ word }}" } },
            outputVariable: "question",
          },
          { name: "answer", target: { case: "prompt", value: "demo" }, outputVariable: "answer" },
        ],
      },
    },
    inputs: inputs({ word: "hi" }),
  });
  print("chain", {
    state: ExecutionState[chainExecution?.state ?? ExecutionState.UNSPECIFIED],
    chainExecutionId: chainExecution?.id,
    steps: chainExecution?.steps.map((s) => s.name),
    executionIds: chainExecution?.steps.map((s) => s.executionId),
    text: outputText(chainExecution?.outputs ?? []),
  });

  // An unknown prompt: NOT_FOUND with a google.rpc.ErrorInfo reason.
  try {
    await client.executions.executePrompt({ target: { case: "prompt", value: "no-such-prompt" } });
    print("error", { code: "none" });
  } catch (err) {
    const details = errorDetails(err);
    print("error", { code: Code[details.code], reason: details.reason, domain: details.domain, message: details.message });
  }

  // A deadline shorter than the (mock) provider's latency.
  const slow = create(InlinePromptSchema, {
    model: "mock-1",
    prompt: "slow",
    parameters: { extra: { mock: { latency_ms: 5000 } } },
  });
  const started = Date.now();
  try {
    const answer = await client.executions.executePrompt(
      { target: { case: "inlinePrompt", value: slow } },
      { timeoutMs: 600 },
    );
    // promptgate answers REJECTED EXECUTION_TIMEOUT just before the deadline,
    // unless the deadline fires first.
    print("deadline", { outcome: ExecutionState[answer.state], errorCode: answer.error?.code, elapsedMs: Date.now() - started });
  } catch (err) {
    print("deadline", { outcome: Code[errorDetails(err).code], elapsedMs: Date.now() - started });
  }
  client.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
