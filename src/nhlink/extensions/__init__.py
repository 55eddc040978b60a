"""Extensions (PROTOCOL.md §8): the attach handshake and the built-in health, logging and geo."""
