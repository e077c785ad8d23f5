// The AI SDK's own transport and reader against a live agent-server: POST a useChat
// request through DefaultChatTransport and fold the stream with readUIMessageStream.
// Prints the final UI message as JSON. Usage: node aisdk.mjs BASE_URL [text]
import { DefaultChatTransport, readUIMessageStream } from "ai";
import { randomUUID } from "node:crypto";

const [base, text = "what is 6*7?"] = process.argv.slice(2);
const transport = new DefaultChatTransport({ api: `${base}/ai-sdk/agent` });
const chatId = `chat-${randomUUID()}`;
const stream = await transport.sendMessages({
  chatId,
  trigger: "submit-message",
  messageId: undefined,
  messages: [{ id: randomUUID(), role: "user", parts: [{ type: "text", text }] }],
  abortSignal: undefined,
});
let last = null;
for await (const message of readUIMessageStream({ stream, onError: (e) => { throw e; } })) {
  last = message;
}
const resumed = await transport.reconnectToStream({ chatId });  // nothing active: null
console.log(JSON.stringify({ message: last, reconnect: resumed === null ? null : "stream" }));
