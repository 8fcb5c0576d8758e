// Starts Swagger UI (swagger-ui/swagger-ui-bundle.js) on the OpenAPI document named by
// the page. A file of its own, not an inline script, so a Content-Security-Policy of
// 'self' lets it run.
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  var container = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: container.dataset.specUrl,
    domNode: container,
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    persistAuthorization: false,
    // Swagger UI's default validator badge loads an image from validator.swagger.io.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
  });
});
