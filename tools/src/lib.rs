//! kestrel-tools: Kestrel's own MCP servers (file system, fetch, ...), usable in-process or over
//! stdio by any MCP host. The servers arrive with the agent loop; this crate reserves their home.
