-- deny_list.lua — example: disconnect listed nodes as soon as they connect, and raise an
-- alert. Fill in DENY (node number = reason); with the list empty this script does
-- nothing. Disconnects are verified and audited as "script:deny_list.lua". Link control
-- must be enabled (an api_tokens or users entry), for scripts too.

local DENY = {
  -- ["2999"] = "keeps kerchunking the hub",
}

nexus.on("link_connected", function(e)
  local why = DENY[e.link.node]
  if not why then return end
  nexus.disconnect(e.node, e.link.node, function(r)
    nexus.alert {
      severity = r.ok and "info" or "warning",
      title = ("denied node %s on %s"):format(e.link.node, e.node),
      message = ("%s: %s"):format(why, r.ok and r.detail or r.error),
      node = e.node,
      key = "deny_list:" .. e.node .. ":" .. e.link.node,
    }
  end)
end)
