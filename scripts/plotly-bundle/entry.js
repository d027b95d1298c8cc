// The plotly.js the dashboard loads: its core (which always holds the scatter trace,
// our lines) with the bar and heatmap traces, nothing else (scripts/plotly-bundle/README.md).
'use strict';

var Plotly = require('plotly.js/lib/core');

Plotly.register([require('plotly.js/lib/bar'), require('plotly.js/lib/heatmap')]);

module.exports = Plotly;
