// @langchain/langgraph-sdk's thread-centric stream (client.threads.stream, Agent Protocol
// v2) against a live server, over SSE (Node 20 has no WebSocket): a tool-calling run
// whose text arrives as deltas and whose tool call arrives with its result; an interrupt
// answered and resumed; a second subscriber on the same thread. Prints one JSON summary;
// any client error fails the run (exit 1). Usage: node thread_stream.mjs API_URL
import { Client } from "@langchain/langgraph-sdk";

const client = new Client({ apiUrl: process.argv[2] });
const human = (content) => ({ messages: [{ role: "user", content }] });

// 1. Tool calling: the messages and toolCalls projections, then the output. A projection
// subscribes when first read, so both are read before the run starts and see it whole
// however slow this client is: read after `run.start`, the messages of a fast run once
// came out empty in a full suite on a loaded machine (not reproduced alone; a projection
// that subscribes after the root's end meets the SDK's pause of 2 below).
const thread = client.threads.stream({ assistantId: "agent" });
const messageStream = thread.messages;
const toolCallStream = thread.toolCalls;
await thread.run.start({ input: human("what is 6*7?") });
const texts = [];
const calls = [];
const messages = (async () => {
  for await (const message of messageStream) {
    const deltas = [];
    for await (const delta of message.text) deltas.push(delta);
    texts.push(deltas);
  }
})();
const toolCalls = (async () => {
  const seen = new Set(); // the projection yields a call when it starts and when it ends
  for await (const call of toolCallStream) {
    if (seen.has(call.callId)) continue;
    seen.add(call.callId);
    calls.push({ name: call.name, input: call.input, output: await call.output });
  }
})();
const output = await thread.output;
await Promise.all([messages, toolCalls]);

await thread.close();

// 2. Two clients on one thread: the same events, replayed then live. The run takes
// a while (20 ms a token): a run over before the first client widens its stream to
// `messages` would end its subscription on the narrow stream's `completed`, before
// the replay (the SDK pauses at the root's end), whoever the server.
const first = client.threads.stream({ assistantId: "slow" });
await first.run.start({ input: human("one two three four five six seven eight nine ten") });
const second = client.threads.stream(first.threadId, { assistantId: "slow" });
const [seenFirst, seenSecond] = await Promise.all([events(first), events(second)]);
await first.close();
await second.close();

// 3. An interrupt, then its answer.
const hitl = client.threads.stream({ assistantId: "approval" });
await hitl.run.start({ input: human("deploy?") });
await hitl.output;
const [interrupt] = hitl.interrupts;
const asked = { interrupted: hitl.interrupted, payload: interrupt?.payload ?? null };
// Subscribed before the answer: the SDK ends a subscription at a root terminal event
// only if that event came after it registered, so one opened after the resumed run had
// already ended (a fast run) would wait for ever.
const widened = await hitl.subscribe(["values", "lifecycle"]);
await hitl.input.respond({
  interrupt_id: interrupt.interruptId,
  namespace: interrupt.namespace,
  response: "yes",
});
// The latest state by seq: a widened stream replays the thread after the live events.
let last = null;
let lastSeq = -1;
for await (const event of widened) {
  if (event.method === "values" && event.seq > lastSeq) [last, lastSeq] = [event.params.data, event.seq];
}
await hitl.close();

console.log(
  JSON.stringify({
    texts,
    calls,
    outputTypes: output.messages.map((m) => m.type ?? m.getType?.()),
    final: output.messages.at(-1).content,
    sameEvents: JSON.stringify(seenFirst) === JSON.stringify(seenSecond),
    lifecycle: seenFirst.filter((e) => e.method === "lifecycle").map((e) => e.data.event),
    deltas: seenFirst.filter((e) => e.data.event === "content-block-delta").length,
    asked,
    answer: last?.messages?.at(-1)?.content ?? null,
  }),
);

// A thread's messages and lifecycle events, until its run ends (the SDK then pauses), in
// seq order: a client that widens its stream gets the replay after live events.
async function events(stream) {
  const found = [];
  for await (const event of await stream.subscribe(["messages", "lifecycle"])) {
    found.push({ seq: event.seq, id: event.event_id, method: event.method, data: event.params.data });
  }
  return found.sort((a, b) => a.seq - b.seq);
}
