// LangGraph's official JS client (@langchain/langgraph-sdk) against a live server: store
// items (put, get, search with a filter and with a query, namespaces, delete) and an
// assistant's round trip (create, update as a new version, versions, setLatest, search,
// delete). Prints one JSON summary; any client error fails the run (exit 1).
// Usage: node store.mjs API_URL
import { Client } from "@langchain/langgraph-sdk";

const client = new Client({ apiUrl: process.argv[2] });
const root = `js${Date.now()}${Math.floor(Math.random() * 1e6)}`;

// 1. The store.
await client.store.putItem([root, "docs"], "pasta", { text: "my favourite food is pasta" });
await client.store.putItem([root, "docs"], "bike", { text: "I ride a bike to work" });
await client.store.putItem([root, "prefs"], "theme", { color: "dark" });
const item = await client.store.getItem([root, "prefs"], "theme");
const filtered = await client.store.searchItems([root], { filter: { color: "dark" } });
const ranked = await client.store.searchItems([root, "docs"], { query: "favourite food" });
const namespaces = await client.store.listNamespaces({ prefix: [root] });
await client.store.deleteItem([root, "prefs"], "theme");
const deleted = await client.store.getItem([root, "prefs"], "theme");
for (const key of ["pasta", "bike"]) await client.store.deleteItem([root, "docs"], key);
const store = {
  value: item?.value ?? null,
  createdAt: Boolean(item?.createdAt),
  filtered: filtered.items.map((i) => i.key),
  ranked: ranked.items.map((i) => i.key),
  namespaces: namespaces.namespaces.map((n) => n.join("/")).sort(),
  deleted,
};

// 2. An assistant and its versions.
const created = await client.assistants.create({
  graphId: "agent",
  config: { recursion_limit: 7 },
  metadata: { tag: root },
  name: "js assistant",
});
const updated = await client.assistants.update(created.assistant_id, {
  config: { recursion_limit: 9 },
  metadata: { stage: "prod" },
});
const versions = await client.assistants.getVersions(created.assistant_id);
const latest = await client.assistants.setLatest(created.assistant_id, 1);
const found = await client.assistants.search({ metadata: { tag: root } });
await client.assistants.delete(created.assistant_id);
const afterDelete = await client.assistants.search({ metadata: { tag: root } });
const assistants = {
  created: [created.graph_id, created.version, created.name],
  updated: [updated.version, updated.config.recursion_limit, updated.metadata],
  versions: versions.map((v) => v.version),
  latest: [latest.version, latest.config.recursion_limit],
  found: found.map((a) => a.assistant_id === created.assistant_id),
  afterDelete: afterDelete.length,
};

console.log(JSON.stringify({ store, assistants }));
