"""Property tests over untrusted input (make fuzz): CSV uploads and downloaded image bytes."""
