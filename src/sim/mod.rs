//! The app_rpt simulator: an AMI server that behaves like Asterisk + app_rpt.
