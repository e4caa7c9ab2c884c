-- scheduled_net.lua — example: connect a hub for a weekly net, disconnect it afterwards.
-- Fill in NETS; with the list empty this script does nothing. Days and times are the
-- daemon's local time (day names in English); a net may run past midnight. Control
-- actions from scripts are rate limited, verified and audited as
-- "script:scheduled_net.lua".

local NETS = {
  -- { node = "1999", hub = "2000", day = "Tuesday", start = "20:00", minutes = 60, mode = "transceive" },
}

local DAYS = { Sunday = 0, Monday = 1, Tuesday = 2, Wednesday = 3, Thursday = 4, Friday = 5, Saturday = 6 }
local WEEK = 7 * 24 * 60

-- Minutes from Sunday 00:00 to the net's start.
local function start_of(net)
  local h, m = tostring(net.start):match("^(%d%d?):(%d%d)$")
  assert(DAYS[net.day] and h, ("scheduled_net.lua: net %s on %s: day %q / start %q not understood")
    :format(net.hub, net.node, tostring(net.day), tostring(net.start)))
  return DAYS[net.day] * 1440 + tonumber(h) * 60 + tonumber(m)
end

for _, net in ipairs(NETS) do start_of(net) end -- a typo is a load error, not a silent no-op

local function inside(net, now)
  local t = os.date("*t", now)
  local minute = (t.wday - 1) * 1440 + t.hour * 60 + t.min
  return (minute - start_of(net)) % WEEK < net.minutes
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

-- Connects the nets whose window holds `now` (Unix seconds; default: the current time)
-- and disconnects the ones this script connected whose window has passed. Runs every 30 s;
-- call it with a time to try a schedule.
function check_nets(now)
  now = now or os.time()
  for _, net in ipairs(NETS) do
    local key = "net:" .. net.node .. ":" .. net.hub
    local on = inside(net, now)
    local n = nexus.node(net.node)
    local linked = false
    for _, l in ipairs(n and n.links or {}) do
      if l.node == net.hub then linked = true end
    end
    -- Connect and disconnect are idempotent, but asking only on a change keeps the
    -- audit log short.
    if on and not linked then
      nexus.connect(net.node, net.hub, { mode = net.mode or "transceive" }, report(net, "connect"))
    elseif not on and linked and nexus.store[key] then
      nexus.disconnect(net.node, net.hub, report(net, "disconnect"))
    end
    nexus.store[key] = on or nil
  end
end

nexus.every(30, function() check_nets() end)
