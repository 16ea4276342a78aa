"""Great Expectations gates: suites, the GX context, running, Data Docs and their pinned assets."""
