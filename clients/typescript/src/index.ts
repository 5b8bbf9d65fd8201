// promptgate client for Node: the generated service descriptors and messages
// (./gen) plus a client factory over Connect's gRPC transport (always HTTP/2) that adds
// the API key and a default deadline to every call, typed-input helpers and
// google.rpc.ErrorInfo access on errors.
import { create, fromJson, type JsonValue } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";

import { ErrorInfoSchema, BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";
import { AdminService } from "./gen/promptgate/v1/admin_service_pb.js";
import { ChainService } from "./gen/promptgate/v1/chain_service_pb.js";
import {
  ChatHistorySchema,
  ChatMessageSchema,
  MessageRole,
  PromptInputSchema,
  type ChatMessage,
  type PromptInput,
  type PromptOutput,
} from "./gen/promptgate/v1/common_pb.js";
import { ExecutionService } from "./gen/promptgate/v1/execution_service_pb.js";
import { PromptService } from "./gen/promptgate/v1/prompt_service_pb.js";

export * from "./gen/promptgate/v1/common_pb.js";
export * from "./gen/promptgate/v1/execution_service_pb.js";
export * from "./gen/promptgate/v1/prompt_service_pb.js";
export * from "./gen/promptgate/v1/admin_service_pb.js";
export * from "./gen/promptgate/v1/chain_service_pb.js";
export { Code, ConnectError };

export interface PromptgateClientOptions {
  /** Server address, e.g. "http://localhost:50051" (plaintext h2c) or "https://...". */
  baseUrl: string;
  /** API key, sent as `authorization: Bearer <key>`. */
  apiKey?: string;
  /** Deadline of every call that sets no `timeoutMs` of its own (default 60 s). */
  timeoutMs?: number;
  /** More interceptors, run after the one that adds the API key. */
  interceptors?: Interceptor[];
}

export interface PromptgateClient {
  executions: Client<typeof ExecutionService>;
  prompts: Client<typeof PromptService>;
  chains: Client<typeof ChainService>;
  admin: Client<typeof AdminService>;
  /** Close the HTTP/2 connection (calls still running fail). */
  close(): void;
}

/** Clients for the promptgate services over one gRPC (HTTP/2) transport. */
export function createPromptgateClient(options: PromptgateClientOptions): PromptgateClient {
  const auth: Interceptor = (next) => (request) => {
    if (options.apiKey && !request.header.has("authorization")) {
      request.header.set("authorization", `Bearer ${options.apiKey}`);
    }
    return next(request);
  };
  const sessionManager = new Http2SessionManager(options.baseUrl);
  const transport = createGrpcTransport({
    baseUrl: options.baseUrl,
    sessionManager,
    defaultTimeoutMs: options.timeoutMs ?? 60_000,
    interceptors: [auth, ...(options.interceptors ?? [])],
  });
  return {
    executions: createClient(ExecutionService, transport),
    prompts: createClient(PromptService, transport),
    chains: createClient(ChainService, transport),
    admin: createClient(AdminService, transport),
    close: () => sessionManager.abort(),
  };
}

export type InputValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue } | ChatMessage[];

/**
 * Typed inputs from plain values: string → STRING, number → NUMBER, boolean →
 * BOOLEAN, an array of ChatMessage (see chatMessage) → CHAT_HISTORY, any
 * other object, array or null → JSON.
 */
export function inputs(values: Record<string, InputValue>): PromptInput[] {
  return Object.entries(values).map(([name, value]) => {
    if (typeof value === "string") {
      return create(PromptInputSchema, { name, value: { case: "stringValue", value } });
    }
    if (typeof value === "number") {
      return create(PromptInputSchema, { name, value: { case: "numberValue", value } });
    }
    if (typeof value === "boolean") {
      return create(PromptInputSchema, { name, value: { case: "boolValue", value } });
    }
    if (Array.isArray(value) && value.length > 0 && value.every(isChatMessage)) {
      const history = create(ChatHistorySchema, { messages: value as ChatMessage[] });
      return create(PromptInputSchema, { name, value: { case: "chatHistory", value: history } });
    }
    const json = fromJson(ValueSchema, value as JsonValue);
    return create(PromptInputSchema, { name, value: { case: "jsonValue", value: json } });
  });
}

const ROLES = {
  system: MessageRole.SYSTEM,
  user: MessageRole.USER,
  assistant: MessageRole.ASSISTANT,
  tool: MessageRole.TOOL,
} as const;

/** A chat message for a CHAT_HISTORY input. */
export function chatMessage(role: keyof typeof ROLES, content: string): ChatMessage {
  return create(ChatMessageSchema, { role: ROLES[role], content });
}

function isChatMessage(value: unknown): boolean {
  return typeof value === "object" && value !== null && (value as { $typeName?: string }).$typeName === "promptgate.v1.ChatMessage";
}

/** The text of the string outputs, joined. */
export function outputText(outputs: PromptOutput[]): string {
  return outputs.map((o) => (o.value.case === "stringValue" ? o.value.value : "")).join("");
}

export interface ErrorDetails {
  code: Code;
  message: string;
  /** google.rpc.ErrorInfo reason, e.g. "PROMPT_NOT_FOUND" ("" if absent). */
  reason: string;
  domain: string;
  metadata: Record<string, string>;
  /** google.rpc.BadRequest field violations. */
  violations: { field: string; description: string }[];
}

/** The status code and google.rpc details of a failed call. */
export function errorDetails(err: unknown): ErrorDetails {
  const error = ConnectError.from(err);
  const [info] = error.findDetails(ErrorInfoSchema);
  const violations = error
    .findDetails(BadRequestSchema)
    .flatMap((bad) => bad.fieldViolations.map((v) => ({ field: v.field, description: v.description })));
  return {
    code: error.code,
    message: error.rawMessage,
    reason: info?.reason ?? "",
    domain: info?.domain ?? "",
    metadata: { ...(info?.metadata ?? {}) },
    violations,
  };
}
