"""The Faust side: the app factory, window state, tick handling and the batching sink."""
