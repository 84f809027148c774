//! Key pairs, Diffie-Hellman and XEdDSA signatures.
