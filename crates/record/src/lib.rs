//! streambus-record
