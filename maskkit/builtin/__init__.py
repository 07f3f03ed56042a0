"""maskkit's built-in components (MAE), registered through the same hooks as any plugin."""
