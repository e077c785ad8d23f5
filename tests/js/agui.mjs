// The official AG-UI client (HttpAgent) against a live agent-server: a tool-calling
// conversation, a follow-up turn, an interrupt and its resume. Prints one JSON summary;
// any client-side validation error fails the run (exit 1). Usage: node agui.mjs BASE_URL
import { HttpAgent } from "@ag-ui/client";
import { randomUUID } from "node:crypto";

const base = process.argv[2];

async function run(agent, params = {}) {
  const seen = { events: [], outcome: null, interrupts: [], failed: null };
  await agent.runAgent(params, {
    onEvent: ({ event }) => { seen.events.push(event.type); },
    onRunFinishedEvent: (p) => { seen.outcome = p.outcome; seen.interrupts = p.interrupts ?? []; },
    onRunFailed: ({ error }) => { seen.failed = String(error); },
  });
  if (seen.failed) throw new Error(seen.failed);
  return seen;
}

const agent = new HttpAgent({ url: `${base}/ag-ui/agent`, threadId: `js-${randomUUID()}` });
agent.addMessage({ id: randomUUID(), role: "user", content: "what is 6*7?" });
const first = await run(agent);
const afterFirst = agent.messages.map((m) => ({ role: m.role, content: m.content ?? null }));
agent.addMessage({ id: randomUUID(), role: "user", content: "thanks" });
const second = await run(agent);

const approval = new HttpAgent({ url: `${base}/ag-ui/approval`, threadId: `js-${randomUUID()}` });
approval.addMessage({ id: randomUUID(), role: "user", content: "deploy?" });
const asked = await run(approval);
const resume = asked.interrupts.map((i) => ({ interruptId: i.id, status: "resolved", payload: "yes" }));
const resumed = await run(approval, { resume });

console.log(JSON.stringify({
  first: { events: first.events, outcome: first.outcome },
  messagesAfterFirst: afterFirst,
  second: { events: second.events, outcome: second.outcome, users: agent.messages.filter((m) => m.role === "user").length },
  asked: { outcome: asked.outcome, interrupts: asked.interrupts.length },
  resumed: { outcome: resumed.outcome, text: approval.messages.filter((m) => m.role === "assistant").map((m) => m.content).join("|") },
}));
