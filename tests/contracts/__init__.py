"""Contract tests: one module per stage, checking only what the other stages rely on (issue 16, README "Tests")."""
