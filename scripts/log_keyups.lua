-- log_keyups.lua — example: one log line per keyup, with the callsign when known.
-- Copy it, change it: the daemon reloads it when you save.

nexus.on("link_keyed", function(e)
  local who = e.link.callsign or "unknown callsign"
  nexus.log.info(("%s (%s) keyed up on node %s"):format(e.link.node, who, e.node))
end)

nexus.on("link_unkeyed", function(e)
  nexus.log.info(("%s released after %.1fs"):format(e.link.node, e.duration_seconds or 0))
end)
