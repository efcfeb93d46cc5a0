//! Scale-Up (being implemented).
