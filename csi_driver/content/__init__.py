"""The content store: pulls (pullPolicy → digest → verified blobs and layer tars), inflation, the
SQLite metadata, single flight per digest, and the cache budget. It fetches through the registry
client and asks the layout step for a tree; it never serves a view or touches a mount."""
