-- alerts.lua — bundled plugin: the alerts operators ask for, from the change stream.
--
--   * a transmitter stuck keyed longer than stuck_tx_minutes        (critical)
--   * a link flapping: flap_drops drops within flap_minutes          (warning)
--   * an AMI session down longer than ami_down_seconds               (critical)
--   * a node that lost all its links                                 (warning)
--   * a watched node (watch_nodes) connecting to or leaving a node   (info)
--
-- Settings: plugins.alerts in the YAML config (defaults below). Every alert has a key,
-- so the daemon's alerts.repeat_interval keeps repeats quiet.

local cfg = nexus.config
local STUCK_TX = (cfg.stuck_tx_minutes or 10) * 60
local FLAP_DROPS = cfg.flap_drops or 3
local FLAP_WINDOW = (cfg.flap_minutes or 10) * 60
local AMI_DOWN = cfg.ami_down_seconds or 60
local CHECK_EVERY = cfg.check_seconds or 5

local watched = {}
for _, n in ipairs(cfg.watch_nodes or {}) do
  watched[tostring(n)] = true
end

local tx_since = {}   -- node -> when its transmitter keyed (seconds)
local tx_alerted = {} -- node -> true once the current key-up was reported
local drops = {}      -- "node/link" -> { times of recent drops }
local links = {}      -- node -> { [link] = true }, kept from events
local ami_down = {}   -- server -> { since = seconds, alerted = bool }

local function seconds(e)
  return (e.time_ms or 0) / 1000
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function human(s)
  s = math.floor(s + 0.5)
  if s < 60 then return s .. "s" end
  if s < 3600 then return ("%dm %02ds"):format(s // 60, s % 60) end
  return ("%dh %02dm"):format(s // 3600, (s % 3600) // 60)
end

local function links_of(node)
  local set = links[node]
  if not set then
    set = {}
    links[node] = set
  end
  return set
end

-- What the model knows already (a reload or a late start must not miss a keyed TX).
for _, node in ipairs(nexus.nodes()) do
  local set = links_of(node.node_id)
  for _, l in ipairs(node.links or {}) do set[l.node] = true end
  if node.tx_keyed then tx_since[node.node_id] = nexus.now() end
end

nexus.on("tx_keyed", function(e)
  tx_since[e.node] = seconds(e)
  tx_alerted[e.node] = nil
end)

nexus.on("tx_unkeyed", function(e)
  if tx_alerted[e.node] then
    nexus.alert {
      severity = "info",
      title = "Transmitter released",
      message = ("Node %s stopped transmitting after %s"):format(e.node, human(e.duration_seconds or 0)),
      node = e.node,
      key = "stuck_tx_released:" .. e.node,
    }
  end
  tx_since[e.node] = nil
  tx_alerted[e.node] = nil
end)

local function announce(e, verb)
  if not watched[e.link.node] then return end
  local who = e.link.callsign and (e.link.node .. " (" .. e.link.callsign .. ")") or e.link.node
  nexus.alert {
    severity = "info",
    title = "Watched node " .. verb,
    message = ("%s %s node %s"):format(who, verb == "connected" and "connected to" or "left", e.node),
    node = e.node,
    key = ("watch:%s:%s:%s"):format(e.node, e.link.node, verb),
  }
end

nexus.on("link_connected", function(e)
  links_of(e.node)[e.link.node] = true
  announce(e, "connected")
end)

local function flapping(e)
  local key = e.node .. "/" .. e.link.node
  local now, recent = seconds(e), {}
  for _, t in ipairs(drops[key] or {}) do
    if now - t < FLAP_WINDOW then recent[#recent + 1] = t end
  end
  recent[#recent + 1] = now
  drops[key] = recent
  if #recent >= FLAP_DROPS then
    drops[key] = {}
    nexus.alert {
      severity = "warning",
      title = "Link flapping",
      message = ("Link %s on node %s dropped %d times within %s"):format(e.link.node, e.node, #recent, human(FLAP_WINDOW)),
      node = e.node,
      key = "flap:" .. key,
    }
  end
end

local function lost_all_links(e)
  if ami_down[e.server] then return end -- the AMI alert says it all
  local set = links_of(e.node)
  set[e.link.node] = nil
  local view = nexus.node(e.node)
  local remaining = view and #view.links or count(set)
  if remaining == 0 then
    nexus.alert {
      severity = "warning",
      title = "Node lost all its links",
      message = ("Node %s has no links left (last: %s)"):format(e.node, e.link.node),
      node = e.node,
      key = "no_links:" .. e.node,
    }
  end
end

nexus.on("link_disconnected", function(e)
  announce(e, "left")
  flapping(e)
  lost_all_links(e)
end)

nexus.on("ami_disconnected", function(e)
  ami_down[e.server] = ami_down[e.server] or { since = seconds(e) }
end)

nexus.on("ami_connected", function(e)
  local down = ami_down[e.server]
  ami_down[e.server] = nil
  if down and down.alerted then
    nexus.alert {
      severity = "info",
      title = "AMI connection restored",
      message = ("Server %s is back after %s"):format(e.server, human(seconds(e) - down.since)),
      key = "ami_up:" .. e.server,
    }
  end
end)

-- Timed conditions; global so an operator (or a test) can run it with a given time.
function check(now)
  now = now or nexus.now()
  for node, since in pairs(tx_since) do
    if not tx_alerted[node] and now - since >= STUCK_TX then
      tx_alerted[node] = true
      nexus.alert {
        severity = "critical",
        title = "Transmitter stuck keyed",
        message = ("Node %s has been transmitting for %s (limit %s)"):format(node, human(now - since), human(STUCK_TX)),
        node = node,
        key = "stuck_tx:" .. node,
      }
    end
  end
  for server, down in pairs(ami_down) do
    if not down.alerted and now - down.since >= AMI_DOWN then
      down.alerted = true
      nexus.alert {
        severity = "critical",
        title = "AMI connection down",
        message = ("Server %s has been unreachable for %s"):format(server, human(now - down.since)),
        key = "ami_down:" .. server,
      }
    end
  end
end

nexus.every(CHECK_EVERY, function() check() end)
