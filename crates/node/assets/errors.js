// Collects every script error of the page before anything else runs, so that
// people see it (a banner) and tests can read it (window.__ecomeshErrors).
'use strict';
(function () {
  const errors = [];
  window.__ecomeshErrors = errors;

  function banner() {
    return document.getElementById('script-errors');
  }

  function show(text) {
    const box = banner();
    if (!box) return;
    box.hidden = false;
    const line = document.createElement('p');
    line.textContent = text;
    box.appendChild(line);
  }

  function report(text) {
    errors.push(text);
    show(text);
  }
  window.__ecomeshReportError = report;

  window.addEventListener('error', function (e) {
    if (e instanceof ErrorEvent) {
      report('error: ' + e.message + ' (' + e.filename + ':' + e.lineno + ':' + e.colno + ')');
    } else if (e.target && e.target !== window) {
      const t = e.target;
      report('failed to load ' + (t.src || t.href || t.tagName));
    }
  }, true);

  window.addEventListener('unhandledrejection', function (e) {
    const r = e.reason;
    report('unhandled rejection: ' + (r && r.stack ? r.stack : String(r)));
  });

  document.addEventListener('securitypolicyviolation', function (e) {
    report('blocked by the content security policy: ' + e.violatedDirective + ' ' + e.blockedURI);
  });

  // Errors before the banner existed are shown once the page is parsed.
  document.addEventListener('DOMContentLoaded', function () {
    errors.forEach(show);
  });
})();
