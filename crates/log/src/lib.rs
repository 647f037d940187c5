//! streambus-log
