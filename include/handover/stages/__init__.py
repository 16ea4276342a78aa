"""The rules of each stage, one stage a module: comply, cleanse, mapping, identity, reconcile, report, diff."""
