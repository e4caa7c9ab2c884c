-- announce_watched.lua — example: raise an alert (and so a webhook) when one of your
-- friends' nodes connects to or leaves your node. Put their node numbers in WATCH.

local WATCH = {
  -- ["2000"] = "the club hub",
}

local function announce(e, what)
  local label = WATCH[e.link.node]
  if not label then return end
  nexus.alert {
    severity = "info",
    title = ("%s %s"):format(label, what),
    message = ("Node %s (%s) %s node %s"):format(e.link.node, e.link.callsign or "?", what, e.node),
    node = e.node,
  }
end

nexus.on("link_connected", function(e) announce(e, "connected to") end)
nexus.on("link_disconnected", function(e) announce(e, "left") end)
