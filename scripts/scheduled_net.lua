-- scheduled_net.lua — example: connect a hub for a weekly net, disconnect it afterwards.
-- Fill in NETS; with the list empty this script does nothing. Control actions from
-- scripts are rate limited, verified and audited as "script:scheduled_net.lua".

local NETS = {
  -- { node = "1999", hub = "2000", day = "Tuesday", start = "20:00", minutes = 60, mode = "transceive" },
}

local function minutes_of(hhmm)
  local h, m = hhmm:match("^(%d+):(%d+)$")
  return tonumber(h) * 60 + tonumber(m)
end

local function report(net, what)
  return function(r)
    if r.ok then
      nexus.log.info(("net %s on %s: %s %s (%s)"):format(net.hub, net.node, what, r.result, r.detail))
    else
      nexus.alert {
        severity = "warning",
        title = ("scheduled net: %s of %s failed"):format(what, net.hub),
        message = r.error,
        node = net.node,
        key = "scheduled_net:" .. net.node .. ":" .. net.hub,
      }
    end
  end
end

nexus.every(30, function()
  local now = os.date("*t")
  local today = os.date("%A")
  local minute = now.hour * 60 + now.min
  for _, net in ipairs(NETS) do
    local from = minutes_of(net.start)
    local inside = today == net.day and minute >= from and minute < from + net.minutes
    local n = nexus.node(net.node)
    local linked = false
    for _, l in ipairs(n and n.links or {}) do
      if l.node == net.hub then linked = true end
    end
    -- Connect and disconnect are idempotent, but asking only on a change keeps the
    -- audit log short.
    if inside and not linked then
      nexus.connect(net.node, net.hub, { mode = net.mode or "transceive" }, report(net, "connect"))
    elseif not inside and linked and nexus.store["net:" .. net.node .. ":" .. net.hub] then
      nexus.disconnect(net.node, net.hub, report(net, "disconnect"))
    end
    nexus.store["net:" .. net.node .. ":" .. net.hub] = inside or nil
  end
end)
