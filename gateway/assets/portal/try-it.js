// The try-it console: Swagger UI (vendored, served by the gateway) on the
// API's OpenAPI document. No other host is contacted: no validator badge,
// no remote configuration.
(function () {
  var el = document.getElementById("swagger");
  if (!el || typeof window.SwaggerUIBundle !== "function") {
    return;
  }
  window.SwaggerUIBundle({
    url: el.getAttribute("data-url"),
    domNode: el,
    deepLinking: false,
    validatorUrl: null,
    configUrl: null,
    queryConfigEnabled: false,
    withCredentials: false,
    defaultModelsExpandDepth: 0,
  });
})();
