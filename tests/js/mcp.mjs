// The official MCP TypeScript SDK's client against a live agent-server's /mcp: list the
// agents, call one with progress, continue its thread. Prints a JSON summary.
// Usage: node mcp.mjs BASE_URL [text]
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [base, text = "what is 6*7?"] = process.argv.slice(2);
const client = new Client({ name: "agent-server-js-test", version: "1.0.0" });
const transport = new StreamableHTTPClientTransport(new URL(`${base}/mcp`));
await client.connect(transport);

const { tools } = await client.listTools();
const progress = [];
const first = await client.callTool(
  { name: "agent", arguments: { message: text } },
  undefined,
  { onprogress: (p) => progress.push(p) },
);
const again = await client.callTool({
  name: "agent",
  arguments: { message: "/calculator {\"expression\": \"2+3\"}", thread_id: first.structuredContent.thread_id },
});
await transport.terminateSession();
await client.close();
console.log(JSON.stringify({
  tools: tools.map((t) => ({ name: t.name, input: Object.keys(t.inputSchema.properties ?? {}) })),
  first: { text: first.content[0].text, structured: first.structuredContent, isError: first.isError ?? false },
  progress,
  again: { text: again.content[0].text, thread_id: again.structuredContent.thread_id },
}));
