//! Streaming AEAD envelope. (Being written.)
