//! HLS origin (being built).
