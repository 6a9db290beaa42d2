"""Built-in models that come from other installed packages (converted once, cached, never downloaded)."""
