"""The `kubernaut` command and its subcommands (incidents, workflows, alerts, the demo)."""
