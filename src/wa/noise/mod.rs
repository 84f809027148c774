//! Noise handshake and frame cipher.
