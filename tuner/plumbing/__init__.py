"""Model plumbing every method stands on: where a family keeps its modules and how it lays out
activations (``adapters``), hooks that read or rewrite a module (``hooks``), prompt batching that
is right for left padding and prefix tokens (``tokens``), a module's input and output at one token
(``module_io``), and the replay of the blocks below an edit layer (``prefix``)."""
