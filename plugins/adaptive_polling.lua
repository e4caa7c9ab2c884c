-- adaptive_polling.lua — bundled plugin: poll busy nodes fast and idle nodes slowly.
--
-- Any activity on a node (its transmitter or receiver keying, a link keying, links
-- connecting, dropping or changing) switches its XStat/SawStat polling to fast_seconds.
-- Once nothing is keyed and nothing has happened for cooldown_seconds, it goes back to
-- slow_seconds. The current interval shows in the API (poll_interval_seconds) and in
-- the nexus_poll_interval_seconds metric.
--
-- Settings: plugins.adaptive_polling in the YAML config (defaults below).
--
-- AMI cost: each poll is two actions (XStat + SawStat), so an idle node at SLOW = 60 s
-- costs 2 actions a minute; the keepalive Ping (after 90 s of silence) is never needed
-- while polls run. A change whose event was lost shows at the next poll (within SLOW).

local cfg = nexus.config
local FAST = cfg.fast_seconds or 5
local SLOW = cfg.slow_seconds or 60
local COOLDOWN = cfg.cooldown_seconds or 120
local CHECK_EVERY = cfg.check_seconds or math.max(0.05, math.min(5, COOLDOWN / 4))

local nodes = {} -- node -> { fast = bool, last = seconds, keyed = { [what] = true }, server = name }

local function entry(node)
  local s = nodes[node]
  if not s then
    s = { fast = false, last = 0, keyed = {} }
    nodes[node] = s
  end
  return s
end

local function set_interval(node, s, seconds, why)
  local got, err = nexus.set_poll_interval(node, seconds)
  if got then
    nexus.log.info(("node %s: polling every %gs (%s)"):format(node, got, why))
  elseif not s.warned then
    s.warned = true
    nexus.log.warn(("node %s: cannot change polling: %s"):format(node, err))
  end
end

-- After a reload, nodes left on the fast interval cool down like any other.
for _, view in ipairs(nexus.nodes()) do
  if nexus.poll_interval(view.node_id) == FAST then
    local s = entry(view.node_id)
    s.fast, s.last, s.server = true, nexus.now(), view.server
  end
end

-- Records activity on a node; `what` (tx, rx, link:NAME) is keyed or not.
local function activity(e, what, keyed)
  if not e.node then return end
  local s = entry(e.node)
  s.server = e.server
  s.last = math.max(s.last, (e.time_ms or 0) / 1000)
  if what then s.keyed[what] = keyed or nil end
  if not s.fast then
    s.fast = true
    set_interval(e.node, s, FAST, e.kind)
  end
end

nexus.on("tx_keyed", function(e) activity(e, "tx", true) end)
nexus.on("tx_unkeyed", function(e) activity(e, "tx", false) end)
nexus.on("rx_keyed", function(e) activity(e, "rx", true) end)
nexus.on("rx_unkeyed", function(e) activity(e, "rx", false) end)
nexus.on("link_keyed", function(e) activity(e, "link:" .. e.link.node, true) end)
nexus.on("link_unkeyed", function(e) activity(e, "link:" .. e.link.node, false) end)
nexus.on("link_connected", function(e) activity(e) end)
nexus.on("link_disconnected", function(e) activity(e, "link:" .. e.link.node, false) end)
nexus.on("link_updated", function(e) activity(e) end)

-- A lost session cannot tell us about unkeys: forget what was keyed on that server.
nexus.on("ami_disconnected", function(e)
  for _, s in pairs(nodes) do
    if s.server == e.server then s.keyed = {} end
  end
end)

-- Global so an operator (or a test) can run it with a given time.
function check(now)
  now = now or nexus.now()
  for node, s in pairs(nodes) do
    if s.fast and next(s.keyed) == nil and now - s.last >= COOLDOWN then
      s.fast = false
      set_interval(node, s, SLOW, "idle")
    end
  end
end

nexus.every(CHECK_EVERY, function() check() end)
