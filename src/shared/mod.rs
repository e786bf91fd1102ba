//! State shared by several replicas: the Redis connection the shared stores use.

pub mod redis;
