//! app_rpt knowledge: pure parsers for XStat, SawStat, link strings and VoterStatus.
