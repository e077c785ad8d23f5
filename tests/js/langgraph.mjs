// LangGraph's official JS client (@langchain/langgraph-sdk) against a live server: a
// tool-calling stream in messages-tuple mode, an interrupt and its resume, a background
// run joined, dropped and rejoined from its last event id. Prints one JSON summary; any
// client error fails the run (exit 1). Usage: node langgraph.mjs API_URL
import { Client } from "@langchain/langgraph-sdk";

const client = new Client({ apiUrl: process.argv[2] });
const human = (content) => ({ messages: [{ role: "user", content }] });

async function collect(stream) {
  const parts = [];
  for await (const part of stream) parts.push(part);
  return parts;
}

// 1. Tool calling, streamed token by token.
const assistants = await client.assistants.search({ graphId: "agent" });
const thread = await client.threads.create();
const parts = await collect(
  client.runs.stream(thread.thread_id, "agent", {
    input: human("what is 6*7?"),
    streamMode: ["messages-tuple", "updates"],
  }),
);
const chunks = parts.filter((p) => p.event === "messages").map((p) => p.data[0]);
const callChunks = chunks.flatMap((c) => c.tool_call_chunks ?? []);
const finalId = chunks.at(-1).id;
const toolCalling = {
  assistant: assistants.map((a) => a.graph_id),
  events: [...new Set(parts.map((p) => p.event))],
  toolName: callChunks[0]?.name ?? null,
  toolArgs: callChunks.map((c) => c.args ?? "").join(""),
  toolResults: chunks.filter((c) => c.type === "tool").map((c) => c.content),
  text: chunks.filter((c) => c.id === finalId).map((c) => c.content).join(""),
  updates: parts.filter((p) => p.event === "updates").map((p) => Object.keys(p.data)[0]),
};
const state = await client.threads.getState(thread.thread_id);
toolCalling.stateTypes = state.values.messages.map((m) => m.type);

// 2. An interrupt, then its resume.
const hitl = await client.threads.create();
const asked = await collect(
  client.runs.stream(hitl.thread_id, "approval", { input: human("deploy?"), streamMode: "updates" }),
);
const interrupt = asked.find((p) => p.event === "updates" && p.data.__interrupt__);
const resumed = await collect(
  client.runs.stream(hitl.thread_id, "approval", { command: { resume: "yes" }, streamMode: "values" }),
);
const lastValues = resumed.filter((p) => p.event === "values").at(-1).data;
const interruptFlow = {
  question: interrupt?.data.__interrupt__[0].value ?? null,
  answer: lastValues.messages.at(-1).content,
  status: (await client.threads.get(hitl.thread_id)).status,
};

// 3. A background run joined, dropped after a few tokens, rejoined from its last id.
const bg = await client.threads.create();
const words = Array.from({ length: 40 }, (_, i) => `word${i}`).join(" ");
const run = await client.runs.create(bg.thread_id, "slow", {
  input: human(words),
  streamMode: ["messages-tuple"],
  streamResumable: true, // LangGraph's own server sends event ids only then
});
const first = [];
// "-1": from the start, as useStream rejoins.
for await (const part of client.runs.joinStream(bg.thread_id, run.run_id, { lastEventId: "-1" })) {
  first.push(part);
  if (first.filter((p) => p.event === "messages").length >= 5) break;
}
const lastEventId = first.at(-1).id;
const rest = await collect(client.runs.joinStream(bg.thread_id, run.run_id, { lastEventId }));
const text = [...first, ...rest]
  .filter((p) => p.event === "messages")
  .map((p) => p.data[0].content)
  .join("");
const bgState = await client.threads.getState(bg.thread_id);
const join = {
  lastEventId,
  exactlyOnce: text === bgState.values.messages.at(-1).content,
  ids: [...first, ...rest].map((p) => p.id),
  status: (await client.runs.get(bg.thread_id, run.run_id)).status,
};

console.log(JSON.stringify({ toolCalling, interruptFlow, join }));
