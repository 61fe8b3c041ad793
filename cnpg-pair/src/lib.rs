//! The data-plane driver: observes a synchronous PostgreSQL pair, decides whether the standby is
//! eligible for a lossless promotion, and fences, promotes and rejoins nodes (plain PostgreSQL
//! and CloudNativePG).
