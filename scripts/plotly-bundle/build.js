// Build dashapp/vendor/plotly-heatmap-bar.min.js from plotly.js's sources with esbuild,
// with the options of plotly.js's own esbuild-config.js (README.md here).
'use strict';

const esbuild = require('esbuild');
const fs = require('fs');
const path = require('path');

const version = require('plotly.js/package.json').version;
const out = path.resolve(__dirname, '../../dashapp/vendor/plotly-heatmap-bar.min.js');

esbuild
    .build({
        entryPoints: [path.join(__dirname, 'entry.js')],
        outfile: out,
        format: 'iife',
        globalName: 'Plotly',
        bundle: true,
        minify: true,
        legalComments: 'none',
        banner: {
            // V8's explicit compile hint (Chromium 136+; other engines read a comment): it
            // compiles every function while the script streams in, off the main thread, so
            // neither evaluating plotly.js nor its first plot compiles lazily on the page's
            // main thread (evaluation stops being a long task; the first heatmap is drawn
            // in about half the time)
            js:
                '//# allFunctionsCalledOnLoad\n' +
                `/* plotly.js v${version} (core + bar + heatmap, minified), MIT licence (LICENSE.plotly.js) */`,
        },
        // maplibre's CSS is only required for map traces, which this bundle has none of
        loader: {'.css': 'empty'},
        alias: {regl: '@plotly/regl', stream: 'stream-browserify'},
        define: {global: 'window', 'define.amd': 'false', 'process.env.NODE_DEBUG': 'false'},
        target: 'es2016',
        logLevel: 'warning',
    })
    .then(() => console.log(`wrote ${out} (${fs.statSync(out).size} bytes), plotly.js ${version}`))
    .catch(() => process.exit(1));
