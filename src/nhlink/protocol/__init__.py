"""Sans-I/O protocol layer: rules, state machines and wire vocabulary. Never awaits, sleeps or
reads a clock; time and randomness come in as arguments."""
