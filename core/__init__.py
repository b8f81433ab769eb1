"""What both roles use and neither owns: config, wire records and their codec, prompt
rendering, token views, tasks with their verifiers, and generation engines."""
