"""The commands as users and scripts meet them: htabtool.cli through
CliRunner and as real processes (exit codes, messages, safety, faults,
concurrency, man pages)."""
