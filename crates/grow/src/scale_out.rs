//! Scale-Out (being implemented).
