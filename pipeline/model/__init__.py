"""The network, its losses, how it trains and how it predicts probability maps."""
